// `codegenLsp.*` settings -> the server's camelCase settings and the command that starts it.
import * as os from "node:os";
import * as vscode from "vscode";

export const SECTION = "codegenLsp";
// Extension setting -> server setting (camelCase, as the server names them). Together with OPTIONAL_SETTINGS
// these are the server's settings table (lsp_server/settings.py); tests/test_settings.py checks it.
export const SCALAR_SETTINGS = [
  "model",
  "device",
  "dtype",
  "maxNewTokens",
  "temperature",
  "topP",
  "contextWindow",
  "debounceMs",
  "maxLatencyMs",
  "prefillOnOpen",
  "prefetch",
  "fim",
  "fimSuffixTokens",
  "promptLookup",
  "tokenHealing",
  "cacheBudgetMb",
  "modelMemoryBudgetMb",
  "preparedCache",
  "logLevel",
  "synthesisIdleSeconds",
] as const;
// Sent only when the user set them, so the server's per-language defaults stay in force otherwise.
export const OPTIONAL_SETTINGS = [
  "completionMode",
  "stopPatterns",
  "languageModels",
  "remote",
  "projectContext",
] as const;

/** The server settings from `codegenLsp.*`, camelCase, as initialization options / didChangeConfiguration. */
export function serverSettings(): Record<string, unknown> {
  const cfg = vscode.workspace.getConfiguration(SECTION);
  const out: Record<string, unknown> = {};
  for (const key of SCALAR_SETTINGS) {
    out[key] = cfg.get(key);
  }
  for (const key of OPTIONAL_SETTINGS) {
    const seen = cfg.inspect(key);
    const value =
      seen?.workspaceFolderLanguageValue ??
      seen?.workspaceLanguageValue ??
      seen?.globalLanguageValue ??
      seen?.workspaceFolderValue ??
      seen?.workspaceValue ??
      seen?.globalValue;
    if (value !== undefined && value !== "") {
      out[key] = value;
    }
  }
  return out;
}

export const expandHome = (p: string): string => (p === "~" || p.startsWith("~/") ? os.homedir() + p.slice(1) : p);

/** The command that starts the server: `server.command`, else `pythonPath -m lsp_server serve`, else PATH. */
export function serverCommand(): { command: string; args: string[] } {
  const cfg = vscode.workspace.getConfiguration(SECTION);
  const cmd = cfg.get<string[]>("server.command") ?? [];
  if (cmd.length > 0) {
    return { command: expandHome(cmd[0]), args: cmd.slice(1) };
  }
  const python = cfg.get<string>("server.pythonPath") ?? "";
  if (python) {
    return { command: expandHome(python), args: ["-m", "lsp_server", "serve"] };
  }
  return { command: "codegen-lsp", args: ["serve"] };
}
