"""`python -m lsp_server ...` is `codegen-lsp ...`."""

import sys

from lsp_server.cli import main

sys.exit(main())
