"""codegen-lsp: a language server for local AI code completion."""
