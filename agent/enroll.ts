import os from 'node:os';
import { HttpError, requestJson } from '../lib/http-client.ts';
import { fetchPinnedCertificate, pinnedTlsOptions } from '../protocol/tls-pin.ts';
import { type AgentState, saveState } from './state.ts';

/**
 * Trades a one-time enrollment token for this agent's credential. With a fingerprint, the
 * server's certificate is fetched and checked before the token is sent, and kept for every
 * later connection.
 */
export async function enrollAgent(opts: {
  serverUrl: string;
  token: string;
  fingerprint?: string;
  stateDir: string;
  name?: string;
}): Promise<AgentState> {
  const serverUrl = opts.serverUrl.replace(/\/+$/, '');
  const url = new URL(serverUrl);
  if (url.protocol !== 'https:' && url.protocol !== 'http:')
    throw new Error(`--server must be an http(s) URL: ${serverUrl}`);
  const serverCert =
    url.protocol === 'https:' && opts.fingerprint
      ? await fetchPinnedCertificate(serverUrl, opts.fingerprint)
      : undefined;
  const name = opts.name ?? os.hostname().split('.')[0]!;
  try {
    const enrolled = await requestJson<{ agentId: string; name: string; secret: string }>(
      `${serverUrl}/api/v1/enroll`,
      {
        body: { token: opts.token, name, hostname: os.hostname() },
        tls: serverCert ? pinnedTlsOptions(serverCert) : undefined,
      },
    );
    const state: AgentState = {
      serverUrl,
      agentId: enrolled.agentId,
      name: enrolled.name,
      secret: enrolled.secret,
      serverCert,
    };
    await saveState(opts.stateDir, state);
    return state;
  } catch (err) {
    if (err instanceof HttpError) throw new Error(`enrollment refused: ${err.message}`);
    throw err;
  }
}
