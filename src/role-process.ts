// How every role runs as a process: load its config, start it, and on SIGTERM or SIGINT close it
// cleanly and exit.
import { loadRoleConfig } from './config/args.ts';
import type { ConfigDocument } from './config/load.ts';
import { createLogger, type Logger } from './observability/log.ts';

export interface RunningRole {
  close(): Promise<void>;
}

export async function runRoleProcess(role: string, args: string[], start: (doc: ConfigDocument, log: Logger) => Promise<RunningRole>): Promise<void> {
  const doc = loadRoleConfig(role, args);
  const log = createLogger(role);
  const running = await start(doc, log);
  await new Promise<void>((resolve) => {
    const onSignal = (signal: NodeJS.Signals) => {
      log.info('signal', { signal });
      resolve();
    };
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
  });
  await running.close();
  process.exit(0);
}
