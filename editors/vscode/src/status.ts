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

type Json = unknown;
const isObject = (v: Json): v is Record<string, Json> => typeof v === "object" && v !== null && !Array.isArray(v);

/** A URI as its file name; any other key as it is. */
const label = (k: string): string => (/^[a-z]+:\/\//i.test(k) ? (k.split("/").pop() ?? k) : k);

/** One value for a person: numbers with at most 2 decimals, null as "-", a [first, last] range as "first-last". */
function scalar(v: Json): string {
  if (v === null || v === undefined) {
    return "-";
  }
  if (typeof v === "number") {
    return Number.isInteger(v) ? String(v) : v.toFixed(2);
  }
  if (Array.isArray(v)) {
    return v.length === 2 && v.every((x) => typeof x === "number") ? `${v[0]}-${v[1]}` : v.map(scalar).join(", ");
  }
  return typeof v === "string" ? label(v) : JSON.stringify(v);
}

/** Rows of objects as a table: a header of their keys, columns aligned. */
function table(rows: Record<string, Json>[], pad: string): string[] {
  const keys = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  const cells = [keys, ...rows.map((r) => keys.map((k) => scalar(r[k])))];
  const widths = keys.map((_, i) => Math.max(...cells.map((c) => c[i].length)));
  return cells.map((c) => pad + c.map((x, i) => x.padEnd(widths[i])).join("  ").trimEnd());
}

function render(obj: Record<string, Json>, depth: number, out: string[]): void {
  const pad = "  ".repeat(depth);
  const keys = Object.keys(obj).sort();
  const flat = keys.filter((k) => !isObject(obj[k]) && !(Array.isArray(obj[k]) && isObject((obj[k] as Json[])[0])));
  const width = Math.max(0, ...flat.map((k) => label(k).length));
  for (const k of flat) {
    out.push(`${pad}${label(k).padEnd(width)}  ${scalar(obj[k])}`);
  }
  for (const k of keys.filter((k) => !flat.includes(k))) {
    const v = obj[k];
    if (isObject(v) && Object.keys(v).length === 0) {
      out.push(`${pad}${label(k)}  -`);
      continue;
    }
    out.push(`${pad}${label(k)}`);
    if (isObject(v)) {
      render(v, depth + 1, out);
    } else {
      out.push(...table(v as Record<string, Json>[], pad + "  "));
    }
  }
}

/** `codegen.status` for a person: a section per part, nested parts indented, figures aligned, rows as tables
 * (URIs shown as file names). */
export function formatStatus(status: Record<string, unknown>): string {
  const out: string[] = [];
  render(status as Record<string, Json>, 0, out);
  return out.join("\n");
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
