import { Command, CommanderError } from 'commander';
import { registerAdminCommands } from './commands/admin.ts';
import { registerAgentCommands } from './commands/agent.ts';
import { registerAlertCommands } from './commands/alerts.ts';
import { registerGroupCommands } from './commands/groups.ts';
import { registerMaintenanceCommands } from './commands/maintenance.ts';
import { registerServerCommands } from './commands/server.ts';
import { registerVaultCommands } from './commands/vault.ts';

/** `holdfast`: one entry point for the server, the agent and the admin CLI. */
const program = new Command('holdfast')
  .description('Holdfast backup: server, agent and administration')
  .version('0.1.0')
  .showHelpAfterError()
  .exitOverride();

registerServerCommands(program);
registerAgentCommands(program);
registerAdminCommands(program);
registerGroupCommands(program);
registerAlertCommands(program);
registerMaintenanceCommands(program);
registerVaultCommands(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) process.exit(err.exitCode);
  process.stderr.write(`holdfast: ${(err as Error).message}\n`);
  process.exit(1);
}
