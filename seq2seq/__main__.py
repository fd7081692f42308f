"""``python -m seq2seq``: the command line, also as torchrun starts it.

torchrun --standalone --nproc_per_node=2 -m seq2seq train CONFIG --out DIR
"""

import sys

from seq2seq.cli import main

sys.exit(main())
