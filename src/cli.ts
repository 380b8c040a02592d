#!/usr/bin/env node
// kube-drac: one image, one CLI, one role per process.
import { ConfigError } from './config/reader.ts';

const USAGE = `usage: kube-drac <command> [options]

commands:
  local-cluster [--dir DIR]   run a real etcd + kube-apiserver on loopback with the CRDs installed;
                              prints KUBECONFIG=<path> once ready
  operator [--config FILE]    delete expired RelayGrants (leader-elected on a Lease)
  pop3 [--config FILE]        the POP3 server; each login creates or renews its address's grant
  smtp [--config FILE]        the SMTP relay gate, local delivery and onward relay
  bridge [--config FILE]      lookups and login feeds for existing mail software: socketmap,
                              Postfix policy, whoson, DRAC RPC, Dovecot auth-policy
  all-in-one [--state-dir D]  everything on loopback for trying it out (npm start)
  help                        this text

options for roles:
  --config FILE               the YAML config file (or $KUBE_DRAC_CONFIG)
`;

type Command = (args: string[]) => Promise<void>;

const COMMANDS: Record<string, () => Promise<Command>> = {
  'local-cluster': async () => (await import('./local/cli.ts')).runLocalCluster,
  operator: async () => (await import('./operator/main.ts')).main,
  pop3: async () => (await import('./pop3/main.ts')).main,
  smtp: async () => (await import('./smtp/main.ts')).main,
  bridge: async () => (await import('./bridge/main.ts')).main,
  'all-in-one': async () => (await import('./local/all-in-one.ts')).runAllInOne,
};

async function main(argv: string[]): Promise<void> {
  const [command, ...args] = argv;
  if (!command || command === 'help' || command === '--help' || command === '-h') {
    process.stdout.write(USAGE);
    return;
  }
  const load = COMMANDS[command];
  if (!load) {
    process.stderr.write(`kube-drac: unknown command ${JSON.stringify(command)}\n\n${USAGE}`);
    process.exitCode = 2;
    return;
  }
  await (await load())(args);
}

main(process.argv.slice(2)).catch((err: unknown) => {
  if (err instanceof ConfigError) process.stderr.write(`kube-drac: config error: ${err.message}\n`);
  else process.stderr.write(`kube-drac: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
