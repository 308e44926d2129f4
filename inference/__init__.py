"""The codegen-lsp inference engine: plain PyTorch, no transformers."""
