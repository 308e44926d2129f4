-- Inline ghost text fed by textDocument/inlineCompletion: the plugin's own extmarks (Neovim 0.10/0.11),
-- or `vim.lsp.inline_completion` where it exists (0.12+).
local M = {}

M.ns = vim.api.nvim_create_namespace("codegen_lsp_ghost")
local TRIGGER_INVOKED, TRIGGER_AUTOMATIC = 1, 2

local typed_popup_trigger

-- Per buffer: { client, timer, request_id, suggestion = { text, row, col, end_col, tick, command, taken } }
-- `command` is the item's `codegen.accepted {id}` (run on acceptance; acceptance statistics stay on the
-- machine), `taken` the characters of the item already accepted by the accept-line/accept-word keys.
local state = {}

local function set_hl()
  vim.api.nvim_set_hl(0, "CodegenGhostText", { link = "Comment", default = true })
end
set_hl()
vim.api.nvim_create_autocmd("ColorScheme", {
  group = vim.api.nvim_create_augroup("codegen_lsp_ghost_hl", { clear = true }),
  callback = set_hl, -- `:colorscheme` clears highlight groups
})

local function uv()
  return vim.uv or vim.loop
end

local function use_native(opts)
  local native = vim.lsp.inline_completion ~= nil
  if opts.native == false then
    return false
  end
  return native
end

local function cursor()
  local pos = vim.api.nvim_win_get_cursor(0)
  return pos[1] - 1, pos[2] -- 0-based row, byte column
end

--- Remove the ghost text of `bufnr` (and forget its suggestion).
function M.clear(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  local s = state[bufnr]
  if s then
    s.suggestion = nil
  end
  if vim.api.nvim_buf_is_valid(bufnr) then
    vim.api.nvim_buf_clear_namespace(bufnr, M.ns, 0, -1)
  end
end

local function cancel(bufnr)
  local s = state[bufnr]
  if not s then
    return
  end
  if s.timer then
    s.timer:stop()
  end
  if s.request_id and s.client then
    pcall(function()
      if vim.fn.has("nvim-0.11") == 1 then
        s.client:cancel_request(s.request_id)
      else
        s.client.cancel_request(s.request_id)
      end
    end)
    s.request_id = nil
  end
end

--- The current suggestion of `bufnr`: { text, row, col, end_col } (text is what goes after the cursor).
function M.get(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  local s = state[bufnr]
  return s and s.suggestion or nil
end

local function item_text(item)
  local t = item.insertText
  if type(t) == "table" then
    t = t.value -- StringValue (snippet): shown and inserted as plain text
  end
  return t
end

local function render(bufnr, sug)
  vim.api.nvim_buf_clear_namespace(bufnr, M.ns, 0, -1)
  local lines = vim.split(sug.text, "\n", { plain = true })
  local extmark = {
    virt_text = { { lines[1], "CodegenGhostText" } },
    virt_text_pos = "inline",
    hl_mode = "combine",
  }
  if #lines > 1 then
    extmark.virt_lines = {}
    for i = 2, #lines do
      table.insert(extmark.virt_lines, { { lines[i], "CodegenGhostText" } })
    end
  end
  vim.api.nvim_buf_set_extmark(bufnr, M.ns, sug.row, sug.col, extmark)
end

-- Turn the server's item into the text after the cursor, given the range it replaces.
local function suggestion_from(bufnr, item, row, col, encoding)
  local text = item_text(item)
  if type(text) ~= "string" or text == "" then
    return nil
  end
  local end_col = col
  if item.range then
    local line = vim.api.nvim_buf_get_lines(bufnr, item.range.start.line, item.range.start.line + 1, false)[1] or ""
    if item.range.start.line ~= row or item.range["end"].line ~= row then
      return nil -- multi-line replacements are not shown as ghost text
    end
    local byte_col = require("codegen_lsp").byte_col
    local start_col = byte_col(line, item.range.start.character, encoding)
    end_col = byte_col(line, item.range["end"].character, encoding)
    -- The part of the range before the cursor must be what the user already typed.
    local typed = line:sub(start_col + 1, col)
    if text:sub(1, #typed) ~= typed then
      return nil
    end
    text = text:sub(#typed + 1)
  end
  if text == "" then
    return nil
  end
  local sug = { text = text, row = row, col = col, end_col = math.max(end_col, col), tick = vim.b[bufnr].changedtick }
  sug.command, sug.taken = item.command, 0
  return sug
end

-- Tell the server what the user took: the item's command on a whole accept, `codegen.partiallyAccepted`
-- with the characters taken so far on a partial one.
local function report(bufnr, sug, taken)
  local cmd, s = sug.command, state[bufnr]
  if type(cmd) ~= "table" or type(cmd.command) ~= "string" or not s then
    return
  end
  local params = { command = cmd.command, arguments = cmd.arguments }
  local id = type(cmd.arguments) == "table" and type(cmd.arguments[1]) == "table" and cmd.arguments[1].id
  if taken then
    if not id then
      return
    end
    params = { command = "codegen.partiallyAccepted", arguments = { { id = id, acceptedLength = taken } } }
  end
  require("codegen_lsp").request(s.client, "workspace/executeCommand", params, function() end, bufnr)
end

--- Ask the server for a suggestion at the cursor now.
function M.request(bufnr, trigger_kind)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  local s = state[bufnr]
  if not s or vim.api.nvim_get_current_buf() ~= bufnr or not vim.api.nvim_get_mode().mode:match("^i") then
    return
  end
  cancel(bufnr)
  local client = s.client
  local row, col = cursor()
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  params.context = { triggerKind = trigger_kind or TRIGGER_AUTOMATIC }
  local tick = vim.b[bufnr].changedtick
  local ok, id = require("codegen_lsp").request(client, "textDocument/inlineCompletion", params, function(err, result)
    s.request_id = nil
    if err or not result or not vim.api.nvim_buf_is_valid(bufnr) then
      return
    end
    -- Stale: the buffer or the cursor moved on since the request.
    local r, c = cursor()
    if vim.b[bufnr].changedtick ~= tick or r ~= row or c ~= col or vim.api.nvim_get_current_buf() ~= bufnr then
      return
    end
    if not vim.api.nvim_get_mode().mode:match("^i") then
      return
    end
    local items = result.items or result
    local sug = items[1] and suggestion_from(bufnr, items[1], row, col, client.offset_encoding)
    if sug then
      s.suggestion = sug
      render(bufnr, sug)
    else
      M.clear(bufnr)
    end
  end, bufnr)
  if ok then
    s.request_id = id
  end
end

local function schedule(bufnr)
  local s = state[bufnr]
  M.clear(bufnr)
  cancel(bufnr)
  s.timer = s.timer or uv().new_timer()
  s.timer:start(
    s.opts.debounce_ms,
    0,
    vim.schedule_wrap(function()
      M.request(bufnr, TRIGGER_AUTOMATIC)
    end)
  )
end

-- Insert `text` at the suggestion's place and put the cursor after it.
local function insert(bufnr, sug, text)
  local lines = vim.split(text, "\n", { plain = true })
  vim.api.nvim_buf_set_text(bufnr, sug.row, sug.col, sug.row, sug.end_col, lines)
  local end_row = sug.row + #lines - 1
  local end_col = (#lines == 1 and sug.col or 0) + #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { end_row + 1, end_col })
  return end_row, end_col
end

local function valid(bufnr)
  local sug = M.get(bufnr)
  if not sug or sug.tick ~= vim.b[bufnr].changedtick then
    return nil
  end
  local r, c = cursor()
  if r ~= sug.row or c ~= sug.col then
    return nil
  end
  return sug
end

--- Accept the whole suggestion; false when there is none.
function M.accept(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  local sug = valid(bufnr)
  if not sug then
    return false
  end
  M.clear(bufnr)
  cancel(bufnr)
  insert(bufnr, sug, sug.text)
  state[bufnr].skip_tick = vim.b[bufnr].changedtick
  report(bufnr, sug)
  return true
end

-- Accept the head `split(text)` of the suggestion; the rest stays as ghost text (accepting nothing is a no).
local function accept_part(bufnr, split)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  local sug = valid(bufnr)
  if not sug then
    return false
  end
  local head = split(sug.text)
  if not head or head == "" then
    return false
  end
  if head == sug.text then
    return M.accept(bufnr)
  end
  local rest = sug.text:sub(#head + 1)
  M.clear(bufnr)
  cancel(bufnr)
  local row, col = insert(bufnr, sug, head)
  local s = state[bufnr]
  s.skip_tick = vim.b[bufnr].changedtick
  local taken = sug.taken + vim.fn.strchars(head)
  s.suggestion = { text = rest, row = row, col = col, end_col = col, tick = vim.b[bufnr].changedtick }
  s.suggestion.command, s.suggestion.taken = sug.command, taken
  render(bufnr, s.suggestion)
  report(bufnr, sug, taken)
  return true
end

--- Accept the suggestion up to the end of its current line; the rest stays as ghost text.
function M.accept_line(bufnr)
  return accept_part(bufnr, function(text)
    -- A suggestion starting with a line break accepts that break and the next line.
    local nl = text:find("\n", 2, true)
    return nl and text:sub(1, nl - 1) or text
  end)
end

--- Accept the suggestion's next word (with the blanks before it, or a run of punctuation).
function M.accept_word(bufnr)
  return accept_part(bufnr, function(text)
    return text:match("^%s*[%w_]+") or text:match("^%s*[^%w_%s]+") or text:match("^%s+")
  end)
end

--- Dismiss the ghost text; false when none was shown.
function M.dismiss(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  local had = M.get(bufnr) ~= nil
  cancel(bufnr)
  M.clear(bufnr)
  return had
end

-- Map `lhs` in insert mode to `fn`; when `fn` does nothing, the key keeps its usual meaning.
local function map(bufnr, lhs, fn, desc)
  if not lhs or lhs == "" then
    return
  end
  vim.keymap.set("i", lhs, function()
    if not fn(bufnr) then
      vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes(lhs, true, false, true), "n", false)
    end
  end, { buffer = bufnr, silent = true, desc = desc })
end

local function attach_native(client, bufnr, opts)
  vim.lsp.inline_completion.enable(true, { bufnr = bufnr, client_id = client.id })
  local km = opts.keymaps or {}
  if km.accept then
    vim.keymap.set("i", km.accept, function()
      if not vim.lsp.inline_completion.get({ bufnr = bufnr }) then
        vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes(km.accept, true, false, true), "n", false)
      end
    end, { buffer = bufnr, silent = true, desc = "codegen_lsp: accept suggestion" })
  end
end

-- Whether the character just typed opens the completion menu.
typed_popup_trigger = function(s)
  local triggers = s.opts.popup_triggers
  if not triggers or #triggers == 0 then
    return false
  end
  local col = vim.api.nvim_win_get_cursor(0)[2]
  local ch = vim.api.nvim_get_current_line():sub(col, col)
  return ch ~= "" and vim.tbl_contains(triggers, ch)
end

--- Start ghost text for `client` in `bufnr`.
function M.attach(client, bufnr, opts)
  if use_native(opts) then
    return attach_native(client, bufnr, opts)
  end
  if state[bufnr] then
    state[bufnr].client = client
    return
  end
  state[bufnr] = { client = client, opts = opts }
  local group = vim.api.nvim_create_augroup("codegen_lsp_ghost_" .. bufnr, { clear = true })
  vim.api.nvim_create_autocmd({ "TextChangedI", "TextChangedP" }, {
    group = group,
    buffer = bufnr,
    callback = function(args)
      local s = state[bufnr]
      if s.skip_tick == vim.b[bufnr].changedtick then
        return -- the change was our own accept
      end
      if args.event == "TextChangedP" or vim.fn.pumvisible() == 1 or typed_popup_trigger(s) then
        M.dismiss(bufnr) -- the completion menu has the stage
        return
      end
      schedule(bufnr)
    end,
  })
  vim.api.nvim_create_autocmd("CursorMovedI", {
    group = group,
    buffer = bufnr,
    callback = function()
      local sug = M.get(bufnr)
      if sug then
        local r, c = cursor()
        if r ~= sug.row or c ~= sug.col then
          M.dismiss(bufnr)
        end
      end
    end,
  })
  vim.api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, {
    group = group,
    buffer = bufnr,
    callback = function()
      M.dismiss(bufnr)
    end,
  })
  vim.api.nvim_create_autocmd({ "BufUnload", "LspDetach" }, {
    group = group,
    buffer = bufnr,
    callback = function(args)
      if args.event == "LspDetach" and args.data and args.data.client_id ~= client.id then
        return
      end
      M.dismiss(bufnr)
      local s = state[bufnr]
      if s and s.timer then
        s.timer:close()
      end
      state[bufnr] = nil
      pcall(vim.api.nvim_del_augroup_by_id, group)
    end,
  })
  local km = opts.keymaps or {}
  map(bufnr, km.accept, M.accept, "codegen_lsp: accept suggestion")
  map(bufnr, km.accept_line, M.accept_line, "codegen_lsp: accept suggestion line")
  map(bufnr, km.accept_word, M.accept_word, "codegen_lsp: accept suggestion word")
  map(bufnr, km.dismiss, M.dismiss, "codegen_lsp: dismiss suggestion")
  map(bufnr, km.trigger, function(b)
    M.request(b, TRIGGER_INVOKED)
    return true
  end, "codegen_lsp: ask for a suggestion")
end

return M
