// Command-line arguments every role takes.
import { ConfigError } from './reader.ts';
import { loadConfig, type ConfigDocument } from './load.ts';

export interface RoleArgs {
  configPath: string | undefined;
}

export function parseRoleArgs(role: string, args: string[]): RoleArgs {
  let configPath: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    if (a === '--config' && args[i + 1] !== undefined) configPath = args[++i];
    else if (a.startsWith('--config=')) configPath = a.slice('--config='.length);
    else throw new ConfigError('(arguments)', `kube-drac ${role}: unknown argument ${JSON.stringify(a)} (usage: kube-drac ${role} [--config FILE])`);
  }
  return { configPath };
}

/** Parse the arguments and load the config file they name (or $KUBE_DRAC_CONFIG, or defaults). */
export function loadRoleConfig(role: string, args: string[]): ConfigDocument {
  return loadConfig(parseRoleArgs(role, args).configPath);
}
