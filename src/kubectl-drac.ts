#!/usr/bin/env node
// `kubectl drac`: a kubectl plugin (kubectl runs `kubectl-drac` from the PATH) for kube-drac's
// RelayGrants. Errors are one line that says what is wrong, never a stack trace.
import { ConfigError } from './config/reader.ts';
import { USAGE, UsageError, parseCliArgs } from './cli/args.ts';
import { connect, grant, grants, revoke, top, why, type Cli } from './cli/commands.ts';

const RUN = { grants, grant, revoke, why, top } as const;

async function main(argv: string[]): Promise<void> {
  const args = parseCliArgs(argv);
  if (args.help || args.command === undefined) {
    process.stdout.write(USAGE);
    if (!args.help) process.exitCode = 1;
    return;
  }
  const { client, namespace } = connect(args);
  const cli: Cli = { args, client, namespace, now: Date.now, write: (text) => process.stdout.write(text) };
  try {
    await RUN[args.command](cli);
  } finally {
    client.close();
  }
}

main(process.argv.slice(2)).then(
  () => process.exit(),
  (err: unknown) => {
    const message = err instanceof ConfigError ? `config error: ${err.message}` : err instanceof Error ? err.message : String(err);
    process.stderr.write(`kubectl drac: ${message}\n${err instanceof UsageError ? "Run 'kubectl drac --help' for usage.\n" : ''}`);
    process.exit(1);
  },
);
