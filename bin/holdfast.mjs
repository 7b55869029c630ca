#!/usr/bin/env node
// The one entry point for server, agent and admin CLI. TypeScript sources run through tsx.
import { register } from 'tsx/esm/api';

register();
await import('../cli/main.ts');
