// The parts of `codegen.status` the status bar and the status command show, and the turns of a synthesis.

export type Status = {
  settings?: Record<string, unknown>;
  models?: { name?: string; device?: string; dtype?: string; standsInFor?: string | null }[];
  completions?: { lastReason?: Record<string, string | null> | string | null };
  [key: string]: unknown;
};

/** The headline of `codegen.status`: model, device, dtype, and why the last answer was empty. */
export function summarize(status: Status, activeUri?: string): {
  model: string;
  device: string;
  dtype: string;
  loaded: boolean;
  standsInFor?: string;
  lastEmpty?: string;
} {
  const settings = status.settings ?? {};
  const loaded = status.models?.[0];
  let lastEmpty: string | undefined;
  const reason = status.completions?.lastReason;
  if (typeof reason === "string") {
    lastEmpty = reason;
  } else if (reason && typeof reason === "object") {
    const mine = activeUri ? reason[activeUri] : undefined;
    lastEmpty = mine ?? undefined;
    if (mine === undefined) {
      const all = Object.entries(reason).filter(([, r]) => r);
      lastEmpty = all.length ? all.map(([u, r]) => `${u.split("/").pop()}: ${r}`).join(", ") : undefined;
    }
  }
  return {
    model: String(loaded?.name ?? settings.model ?? "?"),
    device: String(loaded?.device ?? settings.device ?? "?"),
    dtype: String(loaded?.dtype ?? settings.dtype ?? "?"),
    loaded: loaded !== undefined,
    standsInFor: loaded?.standsInFor ?? undefined,
    lastEmpty,
  };
}

export function formatStatus(status: Record<string, unknown>): string {
  return Object.keys(status)
    .sort()
    .map((k) => `${k}: ${typeof status[k] === "object" ? JSON.stringify(status[k]) : String(status[k])}`)
    .join("\n");
}

/** Comment lines -> turns: each non-empty line without its comment leader. */
export function turnsFromLines(lines: string[]): string[] {
  return lines
    .map((l) =>
      l
        .replace(/^\s*(#+|\/\/+|--+|;+|\/\*+|\*+)\s?/, "")
        .replace(/\*\/\s*$/, "")
        .trim(),
    )
    .filter((l) => l.length > 0);
}
