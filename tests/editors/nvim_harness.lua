-- Test harness for headless Neovim: runs a test body in a coroutine so the main loop keeps processing
-- typed keys, LSP messages and timers between steps; results go to $CODEGEN_TEST_OUT as JSON.
local H = { out = {} }

local function write_out(tbl)
  local f = assert(io.open(vim.env.CODEGEN_TEST_OUT, "w"))
  f:write(vim.json.encode(tbl))
  f:close()
end

function H.finish(err)
  if H.done then
    return
  end
  H.done = true
  if err then
    H.out.error = err
  end
  local msgs = vim.api.nvim_exec2("messages", { output = true }).output
  H.out.messages = msgs
  write_out(H.out)
  vim.cmd("qa!")
end

--- Yield to the main loop for `ms` milliseconds.
function H.sleep(ms)
  local co = assert(coroutine.running(), "H.sleep outside the test coroutine")
  vim.defer_fn(function()
    local ok, err = coroutine.resume(co)
    if not ok then
      H.finish(debug.traceback(co, err))
    end
  end, ms)
  coroutine.yield()
end

--- Wait until `cond()` is truthy (polling every 20 ms); error with `what` after `timeout_ms`.
function H.wait_for(what, cond, timeout_ms)
  local deadline = vim.uv.now() + (timeout_ms or 30000)
  while true do
    local ok, v = pcall(cond)
    if ok and v then
      return v
    end
    if vim.uv.now() > deadline then
      error("timed out waiting for " .. what .. (ok and "" or (": " .. tostring(v))), 2)
    end
    H.sleep(20)
  end
end

--- Type `keys` (with <...> notation) as if the user did; returns after the main loop consumed them.
function H.type(keys)
  vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes(keys, true, false, true), "t", false)
  H.sleep(30)
end

function H.lines(bufnr)
  return vim.api.nvim_buf_get_lines(bufnr or 0, 0, -1, false)
end

--- Open `path` with `lines` as a fresh buffer and wait for the codegen_lsp client to be initialized.
function H.open(path, lines)
  local f = assert(io.open(path, "w"))
  f:write(table.concat(lines, "\n") .. "\n")
  f:close()
  vim.cmd("edit " .. vim.fn.fnameescape(path))
  local bufnr = vim.api.nvim_get_current_buf()
  local client = H.wait_for("the codegen_lsp client", function()
    local c = require("codegen_lsp").get_client(bufnr)
    return c and c.initialized and c
  end, 60000)
  vim.api.nvim_win_set_cursor(0, { #lines, 0 }) -- on the last line, as after typing it
  return bufnr, client
end

--- The server's inline completion at the cursor, asked directly (not through the plugin).
function H.inline_sync(client, bufnr)
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  params.context = { triggerKind = 1 }
  local done, result, rerr
  client:request("textDocument/inlineCompletion", params, function(err, res)
    done, result, rerr = true, res, err
  end, bufnr)
  H.wait_for("inlineCompletion answer", function()
    return done
  end, 60000)
  assert(not rerr, vim.inspect(rerr))
  local items = result and (result.items or result) or {}
  return items[1]
end

--- Execute a server command and wait for its answer.
function H.execute(client, bufnr, command, arguments)
  local done, result, rerr
  client:request("workspace/executeCommand", { command = command, arguments = arguments }, function(err, res)
    done, result, rerr = true, res, err
  end, bufnr)
  H.wait_for(command .. " answer", function()
    return done
  end, 120000)
  assert(not rerr, command .. " failed: " .. vim.inspect(rerr))
  return result
end

--- The ghost text shown by the plugin: inline virt_text + virt_lines joined with newlines.
function H.ghost_text(bufnr)
  local ns = require("codegen_lsp.ghost").ns
  local marks = vim.api.nvim_buf_get_extmarks(bufnr, ns, 0, -1, { details = true })
  if #marks == 0 then
    return nil
  end
  local m = marks[1]
  local d = m[4]
  local parts = {}
  for _, chunk in ipairs(d.virt_text or {}) do
    table.insert(parts, chunk[1])
  end
  local lines = { table.concat(parts) }
  for _, vl in ipairs(d.virt_lines or {}) do
    local p = {}
    for _, chunk in ipairs(vl) do
      table.insert(p, chunk[1])
    end
    table.insert(lines, table.concat(p))
  end
  return { text = table.concat(lines, "\n"), row = m[2], col = m[3], pos = d.virt_text_pos, count = #marks }
end

--- Run `body(H)` in a coroutine under a global timeout; Neovim quits when it ends.
function H.run(body, timeout_ms)
  vim.cmd("filetype on")
  vim.o.showmode = false
  vim.o.shortmess = vim.o.shortmess .. "c"
  vim.o.swapfile = false
  vim.defer_fn(function()
    H.finish("global timeout")
  end, timeout_ms or 150000)
  local co = coroutine.create(function()
    local ok, err = xpcall(body, debug.traceback, H)
    H.finish(not ok and err or nil)
  end)
  vim.schedule(function()
    local ok, err = coroutine.resume(co)
    if not ok then
      H.finish(debug.traceback(co, err))
    end
  end)
end

return H
