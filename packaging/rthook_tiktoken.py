"""PyInstaller runtime hook, run before gateway.py inside the binary.

tiktoken copies every encoding file it reads into a cache named after the file's path
($TIKTOKEN_CACHE_DIR, else $TMPDIR/data-gym-cache). The binary unpacks to a new directory at each
start, so each start would leave another 1.7 MB copy behind. The one encoding is inside the binary:
no cache."""

import os

os.environ["TIKTOKEN_CACHE_DIR"] = ""
