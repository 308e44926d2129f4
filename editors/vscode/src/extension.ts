// CodeGen LSP for VS Code: starts `codegen-lsp serve`, shows its inline suggestions (vscode-languageclient 10
// wires textDocument/inlineCompletion to VS Code's ghost text), keeps a status bar item, and adds commands.
import * as vscode from "vscode";
import {
  ExecuteCommandRequest,
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
  State,
  WorkDoneProgress,
  WorkDoneProgressCreateRequest,
} from "vscode-languageclient/node";
import { SECTION, serverCommand, serverSettings } from "./settings";
import { Status, formatStatus, summarize, turnsFromLines } from "./status";

// fallback: ready, but with the built-in model standing in for the configured one, which failed to load.
type StatusKind = "starting" | "loading" | "ready" | "fallback" | "busy" | "error" | "stopped";

let client: LanguageClient | undefined;
let statusItem: vscode.StatusBarItem;
let output: vscode.LogOutputChannel;
let readyText = "CodeGen";
let readyKind: "ready" | "fallback" = "ready";
let readyDetail: string | undefined;
let inFlight = 0;

function setStatus(kind: StatusKind, detail?: string): void {
  const icons: Record<StatusKind, string> = {
    starting: "$(loading~spin)",
    loading: "$(loading~spin)",
    ready: "$(sparkle)",
    fallback: "$(warning)",
    busy: "$(sync~spin)",
    error: "$(error)",
    stopped: "$(circle-slash)",
  };
  const text: Record<StatusKind, string> = {
    starting: "CodeGen: starting",
    loading: `CodeGen: ${detail ?? "loading"}`,
    ready: readyText,
    fallback: readyText,
    busy: readyText,
    error: "CodeGen: error",
    stopped: "CodeGen: stopped",
  };
  statusItem.text = `${icons[kind]} ${text[kind]}`;
  statusItem.tooltip = `CodeGen LSP (${kind})${detail ? ": " + detail : ""}. Click for the server status.`;
  const background = { error: "statusBarItem.errorBackground", fallback: "statusBarItem.warningBackground" };
  const color = background[kind as keyof typeof background];
  statusItem.backgroundColor = color ? new vscode.ThemeColor(color) : undefined;
}

async function executeServerCommand(command: string, args: unknown[] = []): Promise<unknown> {
  if (!client || !client.isRunning()) {
    throw new Error("the CodeGen server is not running");
  }
  return client.sendRequest(ExecuteCommandRequest.type, { command, arguments: args });
}

async function refreshReady(): Promise<void> {
  try {
    const status = (await executeServerCommand("codegen.status")) as Status;
    const s = summarize(status, vscode.window.activeTextEditor?.document.uri.toString());
    const failures = Object.entries((status.modelFailures as Record<string, string> | undefined) ?? {});
    if (!s.loaded && failures.length > 0) {
      setStatus("error", failures.map(([m, why]) => `${m}: ${why}`).join("; "));
      return;
    }
    const base = (m: string) => m.split(/[\\/]/).pop();
    readyText = `CodeGen: ${base(String(s.model))} (${s.device})${s.loaded ? "" : " (not loaded)"}`;
    readyKind = s.standsInFor ? "fallback" : "ready";
    readyDetail = undefined;
    if (s.standsInFor) {
      readyText += ` instead of ${base(s.standsInFor)}`;
      const why = failures.filter(([m]) => m === s.standsInFor).map(([, w]) => w);
      readyDetail = `${base(String(s.model))} stands in for ${s.standsInFor}${why.length ? ": " + why.join("; ") : ""}`;
    }
    setStatus(inFlight > 0 ? "busy" : readyKind, readyDetail);
  } catch (e) {
    setStatus("error", String(e));
  }
}

async function showStatus(): Promise<void> {
  try {
    const status = (await executeServerCommand("codegen.status")) as Status;
    output.appendLine(`--- codegen.status ${new Date().toISOString()}`);
    output.appendLine(formatStatus(status));
    const s = summarize(status, vscode.window.activeTextEditor?.document.uri.toString());
    const parts = [`model ${s.model}${s.loaded ? "" : " (not loaded yet)"}`, `device ${s.device} (${s.dtype})`];
    parts.push(`last empty answer: ${s.lastEmpty ?? "none"}`);
    const pick = await vscode.window.showInformationMessage(`CodeGen: ${parts.join(" · ")}`, "Details");
    if (pick === "Details") {
      output.show(true);
    }
  } catch (e) {
    vscode.window.showErrorMessage(`CodeGen status: ${e instanceof Error ? e.message : String(e)}`);
  }
}

async function synthesize(): Promise<void> {
  const editor = vscode.window.activeTextEditor;
  if (!editor) {
    vscode.window.showWarningMessage("CodeGen: open a file to synthesize into");
    return;
  }
  const doc = editor.document;
  let turns: string[];
  // Where the program goes: over the selected comment lines (each comment once, its code after it), or at the cursor.
  let where: { range: object } | { position: object };
  if (!editor.selection.isEmpty) {
    const sel = editor.selection;
    const lastLine = sel.end.character === 0 && sel.end.line > sel.start.line ? sel.end.line - 1 : sel.end.line;
    const lines: string[] = [];
    for (let i = sel.start.line; i <= lastLine; i++) {
      lines.push(doc.lineAt(i).text);
    }
    turns = turnsFromLines(lines);
    const end = doc.lineAt(lastLine).range.end;
    where = {
      range: { start: { line: sel.start.line, character: 0 }, end: { line: end.line, character: end.character } },
    };
  } else {
    turns = [];
    for (;;) {
      const turn = await vscode.window.showInputBox({
        title: `CodeGen: turn ${turns.length + 1}`,
        prompt: "Describe the next step of the program (leave empty and press Enter to start).",
        ignoreFocusOut: true,
      });
      if (turn === undefined) {
        return; // cancelled
      }
      if (turn.trim() === "") {
        break;
      }
      turns.push(turn.trim());
    }
    const position = editor.selection.active;
    where = { position: { line: position.line, character: position.character } };
  }
  if (turns.length === 0) {
    vscode.window.showWarningMessage("CodeGen: no turns (select comment lines or type them one by one)");
    return;
  }
  const args = {
    textDocument: { uri: doc.uri.toString(), version: doc.version },
    ...where,
    turns,
    insert: true,
  };
  await vscode.window.withProgress(
    { location: vscode.ProgressLocation.Notification, title: `CodeGen: synthesizing (${turns.length} turns)` },
    async () => {
      try {
        // The server inserts the program through workspace/applyEdit (versioned, so a stale edit is refused).
        const result = (await executeServerCommand("codegen.synthesize", [args])) as {
          applied?: boolean;
          reason?: string;
          cancelled?: boolean;
        };
        if (result?.applied === false) {
          vscode.window.showWarningMessage(`CodeGen: program not inserted: ${result.reason ?? "unknown reason"}`);
        } else if (result?.cancelled) {
          vscode.window.showWarningMessage("CodeGen: synthesis cancelled; inserted the turns finished so far");
        }
      } catch (e) {
        vscode.window.showErrorMessage(`CodeGen synthesis failed: ${e instanceof Error ? e.message : String(e)}`);
      }
    },
  );
}

// Acceptance statistics (local to the server): each inline item carries the server's `codegen.accepted {id}`
// command, which VS Code runs when the item is accepted. A partial accept (a word, a line) reaches providers
// only through the `inlineCompletionsAdditions` API proposal (VS Code run with --enable-proposed-api for this
// extension); there the client's provider is given a handler reporting `codegen.partiallyAccepted`. Where
// the proposal is not enabled VS Code refuses such a provider, and the plain one is registered.
type PartialAcceptInfo = number | { acceptedLength: number };

function reportPartialAccepts(): void {
  const languages = vscode.languages as { registerInlineCompletionItemProvider: typeof vscode.languages.registerInlineCompletionItemProvider };
  const register = languages.registerInlineCompletionItemProvider.bind(vscode.languages);
  languages.registerInlineCompletionItemProvider = (selector, provider) => {
    const withPartial = {
      provideInlineCompletionItems: provider.provideInlineCompletionItems.bind(provider),
      handleDidPartiallyAcceptCompletionItem(item: vscode.InlineCompletionItem, info: PartialAcceptInfo): void {
        const id = (item.command?.arguments?.[0] as { id?: unknown } | undefined)?.id;
        const acceptedLength = typeof info === "number" ? info : info?.acceptedLength;
        if (typeof id === "string" && typeof acceptedLength === "number") {
          executeServerCommand("codegen.partiallyAccepted", [{ id, acceptedLength }]).catch(() => undefined);
        }
      },
    };
    try {
      return register(selector, withPartial);
    } catch {
      return register(selector, provider); // the API proposal is not enabled for this extension
    }
  };
}

function createClient(): LanguageClient {
  const { command, args } = serverCommand();
  const languages = vscode.workspace.getConfiguration(SECTION).get<string[]>("languages") ?? ["python"];
  // stdio without a "--stdio" flag (the server speaks stdio by default).
  const serverOptions: ServerOptions = { command, args };
  const clientOptions: LanguageClientOptions = {
    documentSelector: languages.flatMap((language) => [
      { scheme: "file", language },
      { scheme: "untitled", language },
    ]),
    initializationOptions: serverSettings(),
    outputChannel: output,
    traceOutputChannel: output,
    middleware: {
      provideInlineCompletionItems: async (document, position, context, token, next) => {
        inFlight++;
        setStatus("busy");
        try {
          return await next(document, position, context, token);
        } finally {
          inFlight--;
          if (inFlight === 0 && statusItem.text.includes("$(sync~spin)")) {
            setStatus(readyKind, readyDetail);
          }
        }
      },
    },
  };
  return new LanguageClient("codegenLsp", "CodeGen LSP", serverOptions, clientOptions);
}

// Server-created progress (model download/load) goes to the status bar and the window's progress area.
function trackProgress(c: LanguageClient): void {
  c.onRequest(WorkDoneProgressCreateRequest.type, ({ token }) => {
    let finish: (() => void) | undefined;
    let report: ((m: string) => void) | undefined;
    vscode.window.withProgress({ location: vscode.ProgressLocation.Window, title: "CodeGen" }, (progress) => {
      report = (m) => progress.report({ message: m });
      return new Promise<void>((resolve) => (finish = resolve));
    });
    const sub = c.onProgress(WorkDoneProgress.type, token, (value) => {
      if (value.kind === "end") {
        sub.dispose();
        finish?.();
        void refreshReady();
        return;
      }
      const pct = value.percentage !== undefined ? ` ${value.percentage}%` : "";
      const title = value.kind === "begin" ? value.title : "loading";
      const msg = `${value.message ?? title}${pct}`;
      report?.(msg);
      setStatus("loading", msg);
    });
  });
}

// The first model load may begin before the progress handler is in place: poll until a model is loaded.
async function waitUntilLoaded(): Promise<void> {
  const started = Date.now();
  while (client?.isRunning() && Date.now() - started < 15 * 60 * 1000) {
    try {
      const status = (await executeServerCommand("codegen.status")) as Status;
      const s = summarize(status, vscode.window.activeTextEditor?.document.uri.toString());
      if (s.loaded || Object.keys((status.modelFailures as object | undefined) ?? {}).length > 0) {
        await refreshReady();
        return;
      }
      if (!statusItem.text.includes("CodeGen: loading") && !statusItem.text.includes("CodeGen: loaded")) {
        setStatus("loading", `loading ${String(s.model).split(/[\\/]/).pop()}`);
      }
    } catch (e) {
      setStatus("error", String(e));
      return;
    }
    await new Promise((r) => setTimeout(r, 500));
  }
}

async function startClient(): Promise<void> {
  setStatus("starting");
  client = createClient();
  client.onDidChangeState((e) => {
    if (e.newState === State.Stopped) {
      setStatus("stopped");
    }
  });
  try {
    await client.start();
    // After start(): the client's own progress feature registers its handler during start.
    trackProgress(client);
    await waitUntilLoaded();
  } catch (e) {
    setStatus("error", e instanceof Error ? e.message : String(e));
    output.appendLine(`CodeGen server failed to start: ${e}`);
  }
}

async function restart(): Promise<void> {
  if (client) {
    const old = client;
    client = undefined;
    try {
      await old.stop();
    } catch {
      // already stopped
    }
    await old.dispose().catch(() => undefined);
  }
  await startClient();
}

export async function activate(context: vscode.ExtensionContext): Promise<{ client: () => LanguageClient | undefined }> {
  output = vscode.window.createOutputChannel("CodeGen LSP", { log: true });
  statusItem = vscode.window.createStatusBarItem("codegenLsp.status", vscode.StatusBarAlignment.Right, 100);
  statusItem.name = "CodeGen LSP";
  statusItem.command = "codegenLsp.showStatus";
  statusItem.show();
  reportPartialAccepts();
  context.subscriptions.push(
    output,
    statusItem,
    vscode.commands.registerCommand("codegenLsp.showStatus", showStatus),
    vscode.commands.registerCommand("codegenLsp.synthesize", synthesize),
    vscode.commands.registerCommand("codegenLsp.restart", restart),
    vscode.commands.registerCommand("codegenLsp.clearCache", async () => {
      try {
        await executeServerCommand("codegen.clearCache");
        vscode.window.setStatusBarMessage("CodeGen: cache cleared", 3000);
      } catch (e) {
        vscode.window.showErrorMessage(`CodeGen: ${e instanceof Error ? e.message : String(e)}`);
      }
    }),
    vscode.workspace.onDidChangeConfiguration(async (e) => {
      if (!e.affectsConfiguration(SECTION)) {
        return;
      }
      if (e.affectsConfiguration(`${SECTION}.server`) || e.affectsConfiguration(`${SECTION}.languages`)) {
        output.info("server command or languages changed: restarting the server");
        await restart(); // a new command or document selector needs a new client
        return;
      }
      if (client?.isRunning()) {
        const settings = serverSettings();
        output.info(`settings changed: ${JSON.stringify(settings)}`);
        await client.sendNotification("workspace/didChangeConfiguration", { settings });
        void refreshReady();
      }
    }),
  );
  await startClient();
  return { client: () => client };
}

export async function deactivate(): Promise<void> {
  if (client) {
    await client.stop();
  }
}
