-- Server state for the statusline ($/progress while the model loads) and :CodegenStatus.
local M = {}

M.progress = nil -- { title, message, percentage } while the server reports work in progress
M.summary = nil -- the last `codegen.status` headline (require("codegen_lsp").summarize), for the statusline

local function redraw()
  vim.schedule(function()
    vim.cmd("redrawstatus")
  end)
end

--- Ask the server for its status (asynchronously) and keep the headline for the statusline.
function M.refresh()
  require("codegen_lsp").execute("codegen.status", {}, function(err, result)
    if not err and result then
      M.summary = require("codegen_lsp").summarize(result)
      redraw()
    end
  end)
end

function M.on_progress(result)
  local value = result and result.value
  if type(value) ~= "table" then
    return
  end
  if value.kind == "end" then
    M.progress = nil
    M.refresh() -- a model finished loading: which one (and what it stands in for) changed
  else
    M.progress = {
      title = value.title or (M.progress and M.progress.title) or "codegen",
      message = value.message,
      percentage = value.percentage,
    }
  end
  redraw()
end

local function base(name)
  return vim.fn.fnamemodify(tostring(name), ":t")
end

--- A short string for the statusline: "codegen: loading 40%", "codegen: builtin instead of X" while
--- another model stands in for the configured one, "codegen" or "".
function M.statusline()
  if not require("codegen_lsp").get_client(0) then
    return ""
  end
  local p = M.progress
  if p then
    return ("codegen: %s%s"):format(p.message or p.title, p.percentage and (" " .. p.percentage .. "%") or "")
  end
  local sum = M.summary
  if sum and sum.stands_in_for then
    return ("codegen: %s instead of %s"):format(base(sum.model), base(sum.stands_in_for))
  end
  return "codegen"
end

-- A URI as its file name; any other key as it is.
local function label(k)
  k = tostring(k)
  return k:match("^%a+://") and base(k) or k
end

local function is_list(t)
  return type(t) == "table" and (vim.islist or vim.tbl_islist)(t) and #t > 0
end

-- One value for a person: at most 2 decimals, null as "-", a {first, last} range as "first-last".
local function scalar(v)
  if v == nil or v == vim.NIL then
    return "-"
  elseif type(v) == "number" then
    return v == math.floor(v) and ("%d"):format(v) or ("%.2f"):format(v)
  elseif type(v) == "table" then
    if next(v) == nil then
      return "-"
    elseif #v == 2 and type(v[1]) == "number" and type(v[2]) == "number" then
      return ("%d-%d"):format(v[1], v[2])
    end
    return table.concat(vim.tbl_map(scalar, v), ", ")
  end
  return type(v) == "string" and label(v) or tostring(v)
end

local function padded(text, width)
  return text .. string.rep(" ", width - vim.fn.strdisplaywidth(text))
end

-- Rows (a list of tables) as a table: a header of their keys, columns aligned.
local function rows_table(rows, pad, lines)
  local keys, seen = {}, {}
  for _, r in ipairs(rows) do
    for k in pairs(r) do
      if not seen[k] then
        seen[k] = true
        table.insert(keys, k)
      end
    end
  end
  table.sort(keys)
  local cells = { keys }
  for _, r in ipairs(rows) do
    table.insert(cells, vim.tbl_map(function(k)
      return scalar(r[k])
    end, keys))
  end
  local widths = {}
  for i = 1, #keys do
    widths[i] = 0
    for _, c in ipairs(cells) do
      widths[i] = math.max(widths[i], vim.fn.strdisplaywidth(c[i]))
    end
  end
  for _, c in ipairs(cells) do
    local out = {}
    for i, x in ipairs(c) do
      out[i] = padded(x, widths[i])
    end
    local line = (pad .. table.concat(out, "  ")):gsub("%s+$", "")
    table.insert(lines, line)
  end
end

local function render(t, depth, lines)
  local pad = string.rep("  ", depth)
  local keys = vim.tbl_keys(t)
  table.sort(keys, function(a, b)
    return tostring(a) < tostring(b)
  end)
  local flat, nested, width = {}, {}, 0
  for _, k in ipairs(keys) do
    local v = t[k]
    if type(v) == "table" and (is_list(v) and type(v[1]) == "table" or not is_list(v) and next(v) ~= nil) then
      table.insert(nested, k)
    else
      table.insert(flat, k)
      width = math.max(width, vim.fn.strdisplaywidth(label(k)))
    end
  end
  for _, k in ipairs(flat) do
    table.insert(lines, ("%s%s  %s"):format(pad, padded(label(k), width), scalar(t[k])))
  end
  for _, k in ipairs(nested) do
    table.insert(lines, pad .. label(k))
    if is_list(t[k]) then
      rows_table(t[k], pad .. "  ", lines)
    else
      render(t[k], depth + 1, lines)
    end
  end
end

--- The status for a person: a section per part, nested parts indented, figures aligned, rows as tables
--- (URIs shown as file names).
function M.format(status)
  local lines = {}
  render(status or {}, 0, lines)
  return lines
end

--- :CodegenStatus: show `codegen.status` in a message.
function M.show()
  require("codegen_lsp").execute("codegen.status", {}, function(err, result)
    if err then
      vim.notify("codegen.status failed: " .. (err.message or vim.inspect(err)), vim.log.levels.ERROR)
      return
    end
    local sum = require("codegen_lsp").summarize(result)
    M.summary = sum
    redraw()
    local head = ("model: %s%s\ndevice: %s (%s)\nlast empty answer: %s"):format(
      tostring(sum.model),
      sum.stands_in_for and (" (instead of " .. sum.stands_in_for .. ")") or "",
      tostring(sum.device),
      tostring(sum.dtype),
      sum.last_empty_reason or "-"
    )
    vim.notify(head .. "\n" .. table.concat(M.format(result), "\n"), vim.log.levels.INFO, { title = "codegen_lsp" })
  end)
end

--- :CodegenClearCache
function M.clear_cache()
  require("codegen_lsp").execute("codegen.clearCache", {}, function(err)
    if err then
      vim.notify("codegen.clearCache failed: " .. (err.message or vim.inspect(err)), vim.log.levels.ERROR)
    else
      vim.notify("codegen_lsp: cache cleared", vim.log.levels.INFO)
    end
  end)
end

return M
