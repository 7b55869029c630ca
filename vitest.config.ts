import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['**/*.test.ts'],
    exclude: ['node_modules/**', 'data/**', 'bench-data/**', 'scratch/**'],
    // End-to-end tests start real server and agent processes.
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // Two cores: more parallel files only make every process slower.
    maxWorkers: 2,
    minWorkers: 1,
  },
});
