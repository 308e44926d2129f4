-- User commands of codegen_lsp; the server starts only after require("codegen_lsp").setup(opts).
if vim.g.loaded_codegen_lsp then
  return
end
vim.g.loaded_codegen_lsp = 1

vim.api.nvim_create_user_command("CodegenSynthesize", function(cmd)
  require("codegen_lsp.synthesize").command(cmd)
end, {
  nargs = "*",
  range = true,
  desc = "Synthesize a program from turns (arguments split by |, or the selected comment lines)",
})

vim.api.nvim_create_user_command("CodegenStatus", function()
  require("codegen_lsp.status").show()
end, { desc = "Show the codegen-lsp server status" })

vim.api.nvim_create_user_command("CodegenClearCache", function()
  require("codegen_lsp.status").clear_cache()
end, { desc = "Drop the server's KV caches" })

vim.api.nvim_create_user_command("CodegenRestart", function()
  local init = require("codegen_lsp")
  local bufs = {}
  for _, client in ipairs(vim.lsp.get_clients({ name = "codegen_lsp" })) do
    for buf in pairs(client.attached_buffers) do
      table.insert(bufs, buf)
    end
    if vim.fn.has("nvim-0.11") == 1 then
      client:stop()
    else
      client.stop()
    end
  end
  vim.defer_fn(function()
    for _, buf in ipairs(bufs) do
      if vim.api.nvim_buf_is_valid(buf) then
        init.start(buf)
      end
    end
  end, 500)
end, { desc = "Restart the codegen-lsp server" })
