// `kubectl drac` arguments: kubectl's own conventions (-n/--namespace, --context, --kubeconfig,
// -o json, --help) anywhere on the line, then the command and its arguments.
import { parseArgs } from 'node:util';

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

export const COMMANDS = ['grants', 'grant', 'revoke', 'why', 'top'] as const;
export type CommandName = (typeof COMMANDS)[number];

export interface CliArgs {
  command: CommandName | undefined;
  positionals: string[];
  help: boolean;
  namespace: string | undefined;
  context: string | undefined;
  kubeconfig: string | undefined;
  output: 'table' | 'json';
  user: string | undefined;
  for: string | undefined;
  config: string | undefined;
  configMap: string | undefined;
}

/** Which command takes which of its own options (the kubectl ones go with every command). */
const OWN_OPTIONS: Record<CommandName, readonly string[]> = {
  grants: ['user'],
  grant: ['user', 'for', 'config', 'configmap'],
  revoke: ['user', 'config', 'configmap'],
  why: ['config', 'configmap'],
  top: ['config', 'configmap'],
};

export function parseCliArgs(argv: string[]): CliArgs {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        help: { type: 'boolean', short: 'h' },
        namespace: { type: 'string', short: 'n' },
        context: { type: 'string' },
        kubeconfig: { type: 'string' },
        output: { type: 'string', short: 'o' },
        user: { type: 'string' },
        for: { type: 'string' },
        config: { type: 'string' },
        configmap: { type: 'string' },
      },
    });
  } catch (err) {
    throw new UsageError((err as Error).message.replace(/\. To specify a positional argument.*$/s, ''));
  }
  const { values, positionals } = parsed;
  const [first, ...rest] = positionals;
  let command: CommandName | undefined;
  if (first !== undefined) {
    if (!(COMMANDS as readonly string[]).includes(first)) throw new UsageError(`unknown command ${JSON.stringify(first)} (commands: ${COMMANDS.join(', ')})`);
    command = first as CommandName;
  }
  const output = values.output ?? 'table';
  if (output !== 'table' && output !== 'json') throw new UsageError(`-o ${output}: expected -o json (or no -o for a table)`);
  if (command !== undefined) {
    for (const name of ['user', 'for', 'config', 'configmap'] as const) {
      if (values[name] !== undefined && !OWN_OPTIONS[command].includes(name)) throw new UsageError(`--${name} does not apply to ${command}`);
    }
  }
  return {
    command,
    positionals: rest,
    help: values.help ?? false,
    namespace: values.namespace,
    context: values.context,
    kubeconfig: values.kubeconfig,
    output,
    user: values.user,
    for: values.for,
    config: values.config,
    configMap: values.configmap,
  };
}

export const USAGE = `kubectl drac: kube-drac's RelayGrants, from kubectl.

usage: kubectl drac COMMAND [ARGS] [FLAGS]

commands:
  grants [--user U]                   the grants: address, user, source, when each expires
  grant ADDRESS --user U --for 1h     grant ADDRESS relaying for a while (source manual), for U
  revoke ADDRESS                      delete the grant covering ADDRESS
  revoke --user U                     delete every grant of U (an Event on each says so)
  why ADDRESS                         what the SMTP role answers to a relay from ADDRESS, and why
                                      (trusted network, grant until T, grant expired, none)
  top                                 the users relaying most in the last hour (the counts the
                                      SMTP replicas publish with smtp.limits on), and their limits

flags (as kubectl's):
  -n, --namespace NS                  the namespace (default: the context's, else default)
      --context NAME                  the kubeconfig context to use
      --kubeconfig FILE               the kubeconfig (default: $KUBECONFIG, ~/.kube/config)
  -o json                             JSON instead of a table
  -h, --help                          this text

Flags go after \`drac\` (kubectl passes them to the plugin; before it, kubectl refuses them).

why, top (and grant/revoke of an IPv6 address, for grants.ipv6PrefixLength): the SMTP role's config,
  --config FILE                       from a kube-drac config file, or else
  --configmap NAME                    from the chart's ConfigMap, key smtp.yaml (default: the one
                                      in the namespace labelled app.kubernetes.io/part-of=kube-drac;
                                      none: no trusted networks, prefix /64)
`;
