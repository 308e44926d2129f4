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

--- A short string for the statusline: "codegen: loading 40%", "codegen: builtin instead of X" while the
--- built-in model stands in for the configured one, "codegen" or "".
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

-- Flatten the status dict into "key: value" lines (nested tables as JSON).
function M.format(status)
  local lines = {}
  local keys = vim.tbl_keys(status or {})
  table.sort(keys)
  for _, k in ipairs(keys) do
    local v = status[k]
    if type(v) == "table" then
      v = vim.json.encode(v)
    end
    table.insert(lines, ("%s: %s"):format(k, tostring(v)))
  end
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
