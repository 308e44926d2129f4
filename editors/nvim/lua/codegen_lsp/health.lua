-- :checkhealth codegen_lsp: Neovim version, server command, its Python, model and device.
local M = {}

local health = vim.health

-- The Python behind a console script: its "#!" line (pip writes an absolute interpreter path there).
local function python_of(exe)
  local f = io.open(exe, "r")
  if not f then
    return nil
  end
  local first = f:read("*l") or ""
  f:close()
  local py = first:match("^#!%s*(%S+python[%d%.]*)%s*$")
  return py
end

function M.check()
  local init = require("codegen_lsp")
  health.start("codegen_lsp")
  if vim.fn.has("nvim-0.10") == 1 then
    health.ok("Neovim " .. tostring(vim.version()))
  else
    health.error("Neovim 0.10 or newer is required")
  end
  if vim.lsp.inline_completion then
    health.ok("ghost text: vim.lsp.inline_completion (native)")
  else
    health.ok("ghost text: the plugin's extmarks (Neovim < 0.12)")
  end

  local cmd = init.config.cmd
  health.info("server command: " .. table.concat(cmd, " "))
  local exe = vim.fn.exepath(cmd[1])
  if exe == "" then
    health.error(("`%s` not found on PATH"):format(cmd[1]), {
      "pip install codegen-lsp into a Python environment (pip install -e . in the project)",
      "or set setup({ cmd = { '/path/to/venv/bin/codegen-lsp', 'serve' } })",
    })
  else
    health.ok("server executable: " .. exe)
    local py = cmd[1]:match("python[%d%.]*$") and exe or python_of(exe)
    if py then
      local out = vim.fn.system({ py, "-c", "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__)" })
      if vim.v.shell_error == 0 then
        health.ok(("Python: %s (%s)"):format(py, vim.trim(out)))
      else
        health.warn(("Python: %s cannot import torch: %s"):format(py, vim.trim(out)))
      end
    else
      health.info("Python: not found from " .. exe)
    end
  end

  local client = init.get_client()
  if not client then
    local opts = init.init_options
    health.info(
      ("server not running (configured model: %s, device: %s)"):format(opts.model or "default", opts.device or "default")
    )
    return
  end
  health.ok(("server running (client id %d)"):format(client.id))
  local status, err = init.status_sync(5000)
  if not status then
    health.error("codegen.status failed: " .. tostring(err))
    return
  end
  local sum = init.summarize(status)
  local report = sum.loaded and health.ok or health.warn
  if sum.stands_in_for then -- the configured model failed to load: the built-in one serves instead
    local why = sum.stand_in_reason or ("could not load " .. sum.stands_in_for)
    health.warn(("model: %s, standing in: %s"):format(tostring(sum.model), why))
  else
    report(("model: %s%s"):format(tostring(sum.model), sum.loaded and "" or " (not loaded yet)"))
  end
  report(("device: %s (%s)"):format(tostring(sum.device), tostring(sum.dtype)))
  if sum.last_empty_reason then
    health.info("last empty answer: " .. sum.last_empty_reason)
  end
  for _, line in ipairs(require("codegen_lsp.status").format(status)) do
    health.info(line)
  end
end

return M
