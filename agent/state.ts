import { readFile } from 'node:fs/promises';
import { mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { writeFileAtomic } from '../lib/durable-fs.ts';

/** What an enrolled agent keeps in its state folder (agent.json, mode 0600). */
const stateSchema = z.object({
  serverUrl: z.string().url(),
  agentId: z.string(),
  name: z.string(),
  secret: z.string(),
  /** The pinned server certificate (PEM), when enrolled with a fingerprint. */
  serverCert: z.string().optional(),
});
export type AgentState = z.infer<typeof stateSchema>;

export function defaultStateDir(): string {
  if (process.getuid?.() === 0) return '/var/lib/holdfast-agent';
  return path.join(os.homedir(), '.local', 'state', 'holdfast-agent');
}

const stateFile = (dir: string) => path.join(dir, 'agent.json');

export async function saveState(dir: string, state: AgentState): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await writeFileAtomic(stateFile(dir), `${JSON.stringify(state, null, 2)}\n`, 0o600);
}

export async function loadState(dir: string): Promise<AgentState> {
  let text: string;
  try {
    text = await readFile(stateFile(dir), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new Error(`this agent is not enrolled (no ${stateFile(dir)}); run "holdfast agent enroll" first`);
    }
    throw err;
  }
  const parsed = stateSchema.safeParse(JSON.parse(text));
  if (!parsed.success) throw new Error(`${stateFile(dir)} is damaged; enroll the agent again`);
  return parsed.data;
}
