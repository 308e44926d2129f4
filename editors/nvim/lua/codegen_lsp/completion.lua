-- Built-in completion (`vim.lsp.completion`, 0.11+) inserts only the first word of a plain-text item
-- (`textEdit.newText:match("^%S*")`); for AI completions the rest matters, so after an accepted
-- codegen_lsp item the plugin replaces that word with the item's whole text (all its lines).
local M = {}

local typed = {} -- bufnr -> { row, col } of the cursor when the user last typed (no menu item inserted)

local function record(bufnr)
  local info = vim.fn.complete_info({ "selected" })
  if info.selected == nil or info.selected == -1 then
    local pos = vim.api.nvim_win_get_cursor(0)
    typed[bufnr] = { pos[1] - 1, pos[2] }
  end
end

local function complete_done(client, bufnr)
  if vim.v.event.reason ~= "accept" then
    return
  end
  local done = vim.v.completed_item
  local lsp = done and type(done.user_data) == "table" and done.user_data.nvim and done.user_data.nvim.lsp
  if not lsp or lsp.client_id ~= client.id then
    return
  end
  local item = lsp.completion_item
  local edit = item and item.textEdit
  if not edit or item.insertTextFormat == 2 or not edit.range or edit.newText == done.word then
    return
  end
  local range = edit.range
  local pos = vim.api.nvim_win_get_cursor(0)
  local row, col = pos[1] - 1, pos[2]
  if range.start.line ~= row or range["end"].line ~= row then
    return
  end
  local line = vim.api.nvim_get_current_line()
  local init = require("codegen_lsp")
  local start_col = col - #done.word
  -- The part of the range after the cursor where the request was made (text the server's item replaces).
  local at = typed[bufnr]
  local line_at_request = line:sub(1, start_col) .. line:sub(col + 1)
  local end_byte = init.byte_col(line_at_request, range["end"].character, client.offset_encoding)
  local suffix = (at and at[1] == row) and math.max(0, end_byte - at[2]) or 0
  local lines = vim.split(edit.newText, "\n", { plain = true })
  vim.api.nvim_buf_set_text(bufnr, row, start_col, row, math.min(col + suffix, #line), lines)
  local last_row = row + #lines - 1
  local last_col = (#lines == 1 and start_col or 0) + #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { last_row + 1, last_col })
end

--- Enable `vim.lsp.completion` for `client` in `bufnr`, inserting the whole text of accepted items.
function M.enable(client, bufnr)
  vim.lsp.completion.enable(true, client.id, bufnr, { autotrigger = true })
  local group = vim.api.nvim_create_augroup("codegen_lsp_completion_" .. bufnr, { clear = true })
  vim.api.nvim_create_autocmd({ "TextChangedI", "TextChangedP", "InsertEnter" }, {
    group = group,
    buffer = bufnr,
    callback = function()
      record(bufnr)
    end,
  })
  vim.api.nvim_create_autocmd("CompleteDone", {
    group = group,
    buffer = bufnr,
    callback = function()
      complete_done(client, bufnr)
    end,
  })
  vim.api.nvim_create_autocmd("BufUnload", {
    group = group,
    buffer = bufnr,
    callback = function()
      typed[bufnr] = nil
    end,
  })
end

return M
