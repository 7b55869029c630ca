import type { Command } from 'commander';
import pino from 'pino';
import { runAgent } from '../../agent/agent.ts';
import { enrollAgent } from '../../agent/enroll.ts';
import { defaultStateDir } from '../../agent/state.ts';

export function registerAgentCommands(program: Command): void {
  const agent = program.command('agent').description('the protection agent on a machine');
  agent
    .command('enroll')
    .description('enroll this machine with a one-time token from "holdfast enroll-token create"')
    .requiredOption('--server <url>', 'server URL, e.g. https://backup.example.com:8700')
    .requiredOption('--token <token>', 'one-time enrollment token')
    .option('--fingerprint <sha256>', "server certificate's SHA-256 fingerprint (pinned from now on)")
    .option('--state <dir>', 'agent state folder', defaultStateDir())
    .option('--name <name>', 'agent name (default: host name)')
    .option('--json', 'print JSON')
    .action(async (opts) => {
      const state = await enrollAgent({
        serverUrl: opts.server,
        token: opts.token,
        fingerprint: opts.fingerprint,
        stateDir: opts.state,
        name: opts.name,
      });
      if (opts.json)
        process.stdout.write(
          `${JSON.stringify({ agentId: state.agentId, name: state.name, state: opts.state })}\n`,
        );
      else
        process.stdout.write(
          `enrolled as "${state.name}"; start the agent with: holdfast agent run --state ${opts.state}\n`,
        );
    });
  agent
    .command('run')
    .description('run the agent service (connects out to its server)')
    .option('--state <dir>', 'agent state folder', defaultStateDir())
    .option('--log-level <level>', 'trace, debug, info, warn or error', 'info')
    .action(async (opts) => {
      const log = pino({ level: opts.logLevel });
      const running = await runAgent(opts.state, log);
      const stop = () => running.stop();
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
      await running.done;
    });
}
