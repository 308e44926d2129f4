-- :CodegenSynthesize: multi-turn program synthesis; the server writes the program with a versioned edit
-- (over the selected comment lines, or at the cursor).
local M = {}

-- Comment leaders stripped from selected lines, longest first.
local LEADERS = { "^%s*%-%-+%s?", "^%s*//+%s?", "^%s*#+%s?", "^%s*;+%s?", "^%s*%*+%s?", "^%s*/%*+%s?" }

--- Turns from comment lines: each non-empty line without its comment leader.
function M.turns_from_lines(lines)
  local turns = {}
  for _, line in ipairs(lines) do
    local text = line
    for _, pat in ipairs(LEADERS) do
      local stripped, n = text:gsub(pat, "", 1)
      if n > 0 then
        text = stripped
        break
      end
    end
    text = vim.trim((text:gsub("%*/%s*$", "")))
    if text ~= "" then
      table.insert(turns, text)
    end
  end
  return turns
end

--- Turns from command arguments: split on " | " (one turn when there is no bar).
function M.turns_from_args(args)
  local turns = {}
  for part in (args .. "|"):gmatch("(.-)|") do
    part = vim.trim(part)
    if part ~= "" then
      table.insert(turns, part)
    end
  end
  return turns
end

--- Run synthesis in `bufnr`: `turns` and where the program goes: `where.position` (0-based, inserted there)
--- or `where.range` (the selected lines, replaced by the program).
function M.run(bufnr, turns, where, callback)
  local init = require("codegen_lsp")
  local client = init.get_client(bufnr)
  if not client then
    vim.notify("codegen_lsp: no server attached to this buffer", vim.log.levels.WARN)
    return
  end
  if #turns == 0 then
    vim.notify("codegen_lsp: no turns (give them as arguments, split by |, or select comment lines)", vim.log.levels.WARN)
    return
  end
  local version = vim.lsp.util.buf_versions[bufnr] or vim.b[bufnr].changedtick
  local args = {
    textDocument = { uri = vim.uri_from_bufnr(bufnr), version = version },
    position = where.position,
    range = where.range,
    turns = turns,
    insert = true,
  }
  vim.notify(("codegen_lsp: synthesizing from %d turn(s)..."):format(#turns), vim.log.levels.INFO)
  init.request(client, "workspace/executeCommand", { command = "codegen.synthesize", arguments = { args } }, function(err, result)
    M.last = { err = err, result = result }
    if err then
      vim.notify("codegen.synthesize failed: " .. (err.message or vim.inspect(err)), vim.log.levels.ERROR)
    elseif result and result.applied == false then
      vim.notify("codegen_lsp: program not inserted: " .. tostring(result.reason), vim.log.levels.WARN)
    elseif result and result.cancelled then
      vim.notify("codegen_lsp: synthesis cancelled; inserted the turns finished so far", vim.log.levels.WARN)
    end
    if callback then
      callback(err, result)
    end
  end, bufnr)
end

--- The :CodegenSynthesize command (with a range: the selected comment lines are the turns).
function M.command(cmd)
  local bufnr = vim.api.nvim_get_current_buf()
  local client = require("codegen_lsp").get_client(bufnr)
  local turns, where
  if cmd.range > 0 then
    local lines = vim.api.nvim_buf_get_lines(bufnr, cmd.line1 - 1, cmd.line2, false)
    turns = M.turns_from_lines(lines)
    -- The program replaces the selected lines: each comment once, its code after it.
    local last = lines[#lines] or ""
    local char = require("codegen_lsp").char_index(last, client and client.offset_encoding or "utf-16")
    where = { range = { start = { line = cmd.line1 - 1, character = 0 }, ["end"] = { line = cmd.line2 - 1, character = char } } }
  else
    turns = M.turns_from_args(cmd.args)
    local params = vim.lsp.util.make_position_params(0, client and client.offset_encoding or "utf-16")
    where = { position = params.position }
  end
  if #cmd.args > 0 and cmd.range > 0 then
    vim.list_extend(turns, M.turns_from_args(cmd.args))
  end
  M.run(bufnr, turns, where)
end

return M
