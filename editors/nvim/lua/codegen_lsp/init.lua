-- codegen_lsp: starts `codegen-lsp serve` for the configured filetypes and wires up completion,
-- inline ghost text and the server's commands.
local M = {}

local NAME = "codegen_lsp"

-- Keys the plugin itself uses; every other key of setup() goes to the server as an initialization option.
local PLUGIN_KEYS = {
  cmd = true,
  filetypes = true,
  root_markers = true,
  builtin_completion = true,
  completion_triggers = true,
  ghost_text = true,
  on_attach = true,
}

M.defaults = {
  cmd = { "codegen-lsp", "serve" },
  filetypes = { "python", "javascript", "typescript", "go", "rust", "c", "cpp", "java", "lua", "sh" },
  root_markers = { ".git", "pyproject.toml", "package.json", "go.mod", "Cargo.toml" },
  -- Enable `vim.lsp.completion` (0.11+) with autotrigger in attached buffers; "auto" leaves it off when
  -- nvim-cmp or blink.cmp is loaded (they pick the server up as an ordinary LSP source).
  builtin_completion = "auto",
  -- Characters that open the completion menu when the server declares none (Neovim 0.11 autotriggers
  -- only on trigger characters; ghost text covers every other keystroke).
  completion_triggers = { ".", "(", "," },
  ghost_text = {
    enabled = true,
    debounce_ms = 120, -- client-side wait after the last keystroke before asking for a suggestion
    -- 0.12+ has `vim.lsp.inline_completion`; "auto" uses it there and the plugin's extmarks before.
    native = "auto",
    keymaps = {
      accept = "<M-l>",
      accept_line = "<M-Right>",
      accept_word = "<C-Right>",
      dismiss = "<C-]>",
      trigger = "<M-\\>",
    },
  },
}

M.config = vim.deepcopy(M.defaults)
M.init_options = {}

local islist = vim.islist or vim.tbl_islist

-- Deep-merge `b` over `a`: tables with keys merge, lists (and scalars) replace.
local function merge(a, b)
  local function nonempty_list(t)
    return islist(t) and next(t) ~= nil
  end
  if type(a) ~= "table" or type(b) ~= "table" or nonempty_list(a) or nonempty_list(b) then
    return vim.deepcopy(b)
  end
  local out = vim.deepcopy(a)
  for k, v in pairs(b) do
    out[k] = merge(out[k], v)
  end
  return out
end
M._merge = merge

local function split_opts(opts)
  local plugin, server = {}, {}
  for k, v in pairs(opts or {}) do
    if PLUGIN_KEYS[k] then
      plugin[k] = v
    else
      server[k] = v
    end
  end
  return plugin, server
end

--- The running codegen_lsp client attached to `bufnr` (or any, when bufnr is nil).
function M.get_client(bufnr)
  local filter = { name = NAME }
  if bufnr then
    filter.bufnr = bufnr == 0 and vim.api.nvim_get_current_buf() or bufnr
  end
  return vim.lsp.get_clients(filter)[1]
end

--- Send a request through `client`, across the 0.10 (dot) and 0.11+ (method) call styles.
function M.request(client, method, params, handler, bufnr)
  if vim.fn.has("nvim-0.11") == 1 then
    return client:request(method, params, handler, bufnr)
  end
  return client.request(method, params, handler, bufnr)
end

function M.request_sync(client, method, params, timeout_ms, bufnr)
  if vim.fn.has("nvim-0.11") == 1 then
    return client:request_sync(method, params, timeout_ms, bufnr)
  end
  return client.request_sync(method, params, timeout_ms, bufnr)
end

--- Send a notification through `client` (0.10 dot style or 0.11+ method style).
function M.notify(client, method, params)
  if vim.fn.has("nvim-0.11") == 1 then
    return client:notify(method, params)
  end
  return client.notify(method, params)
end

--- LSP character index (in `encoding`) of the end of `line`.
function M.char_index(line, encoding)
  if vim.fn.has("nvim-0.11") == 1 then
    return vim.str_utfindex(line, encoding)
  end
  local u32, u16 = vim.str_utfindex(line)
  return encoding == "utf-8" and #line or encoding == "utf-32" and u32 or u16
end

--- Byte column in `line` of the LSP character index `character` (in `encoding`).
function M.byte_col(line, character, encoding)
  if vim.fn.has("nvim-0.11") == 1 then
    return vim.str_byteindex(line, encoding, character, false)
  end
  if encoding == "utf-8" then
    return math.min(character, #line)
  end
  local ok, col = pcall(vim.str_byteindex, line, character, encoding == "utf-16")
  return ok and col or #line
end

local function root_dir(bufnr)
  local path = vim.api.nvim_buf_get_name(bufnr)
  local found = vim.fs.find(M.config.root_markers, { path = vim.fs.dirname(path), upward = true })[1]
  return found and vim.fs.dirname(found) or vim.fn.getcwd()
end

local function want_builtin_completion()
  local mode = M.config.builtin_completion
  if not vim.lsp.completion or mode == false then
    return false
  end
  if mode == "auto" then
    return not (package.loaded["cmp"] or package.loaded["blink.cmp"])
  end
  return true
end

local function on_attach(client, bufnr)
  local cp = client.server_capabilities.completionProvider
  if cp and (cp.triggerCharacters == nil or #cp.triggerCharacters == 0) then
    cp.triggerCharacters = M.config.completion_triggers
  end
  local builtin = want_builtin_completion()
  if builtin then
    require("codegen_lsp.completion").enable(client, bufnr)
  end
  local gt = M.config.ghost_text
  if gt and gt.enabled then
    -- A trigger character already asks for the completion menu; a ghost request right after it would
    -- only queue the same work again behind it on the server's one inference worker.
    local popup_triggers = builtin and cp and cp.triggerCharacters or {}
    require("codegen_lsp.ghost").attach(client, bufnr, vim.tbl_extend("force", gt, { popup_triggers = popup_triggers }))
  end
  if type(M.config.on_attach) == "function" then
    M.config.on_attach(client, bufnr)
  end
end

--- Start (or reuse) the server for `bufnr`; returns the client id.
function M.start(bufnr)
  bufnr = (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
  if vim.bo[bufnr].buftype ~= "" then
    return nil
  end
  return vim.lsp.start({
    name = NAME,
    cmd = M.config.cmd,
    root_dir = root_dir(bufnr),
    init_options = M.init_options,
    settings = M.init_options,
    on_attach = on_attach,
    handlers = {
      ["$/progress"] = function(err, result, ctx, cfg)
        require("codegen_lsp.status").on_progress(result)
        return vim.lsp.handlers["$/progress"](err, result, ctx, cfg)
      end,
    },
  }, { bufnr = bufnr })
end

--- Configure the plugin: `opts.cmd`, `opts.filetypes`, ...; every other key is a server setting.
function M.setup(opts)
  local plugin, server = split_opts(opts)
  M.config = merge(M.defaults, plugin)
  M.init_options = server
  local group = vim.api.nvim_create_augroup("codegen_lsp", { clear = true })
  vim.api.nvim_create_autocmd("FileType", {
    group = group,
    pattern = M.config.filetypes,
    callback = function(args)
      M.start(args.buf)
    end,
  })
  -- Buffers already open when setup() runs.
  for _, buf in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_loaded(buf) and vim.tbl_contains(M.config.filetypes, vim.bo[buf].filetype) then
      M.start(buf)
    end
  end
end

--- Change server settings at run time (camelCase keys); sent as workspace/didChangeConfiguration.
function M.update_settings(settings)
  M.init_options = merge(M.init_options, settings)
  for _, client in ipairs(vim.lsp.get_clients({ name = NAME })) do
    client.settings = merge(client.settings or {}, settings)
    M.notify(client, "workspace/didChangeConfiguration", { settings = client.settings })
  end
end

--- Run a server command (`codegen.status`, ...) on the client of the current buffer.
function M.execute(command, arguments, handler, bufnr)
  bufnr = bufnr or vim.api.nvim_get_current_buf()
  local client = M.get_client(bufnr) or M.get_client()
  if not client then
    vim.notify("codegen_lsp: no server attached (is setup() called for this filetype?)", vim.log.levels.WARN)
    return nil
  end
  return M.request(client, "workspace/executeCommand", { command = command, arguments = arguments }, handler, bufnr)
end

--- The headline of a `codegen.status` answer: model (and what it stands in for), device, dtype, and the last
--- empty reason.
function M.summarize(status)
  status = status or {}
  local settings = status.settings or {}
  local loaded = (status.models or {})[1] or {}
  local completions = status.completions or {}
  local reason = completions.lastReason
  if type(reason) == "table" then
    local parts = {}
    for uri, r in pairs(reason) do
      if r ~= vim.NIL and r ~= nil then
        table.insert(parts, vim.fn.fnamemodify(vim.uri_to_fname(uri), ":t") .. ": " .. tostring(r))
      end
    end
    reason = #parts > 0 and table.concat(parts, ", ") or nil
  elseif reason == vim.NIL then
    reason = nil
  end
  local stands_in_for = loaded.standsInFor ~= vim.NIL and loaded.standsInFor or nil
  local failure = stands_in_for and (status.modelFailures or {})[stands_in_for] or nil
  return {
    model = loaded.name or settings.model,
    device = loaded.device or settings.device,
    dtype = loaded.dtype or settings.dtype,
    loaded = loaded.name ~= nil,
    stands_in_for = stands_in_for, -- the configured model the built-in one replaces, which failed to load
    stand_in_reason = failure,
    last_empty_reason = reason,
  }
end

--- `codegen.status` synchronously; returns the status table or nil, err.
function M.status_sync(timeout_ms)
  local client = M.get_client(0) or M.get_client()
  if not client then
    return nil, "no codegen_lsp client"
  end
  local resp, err = M.request_sync(client, "workspace/executeCommand", { command = "codegen.status" }, timeout_ms or 5000, 0)
  if not resp then
    return nil, err
  end
  if resp.err then
    return nil, resp.err.message
  end
  return resp.result
end

return M
