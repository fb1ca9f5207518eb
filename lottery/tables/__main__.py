import sys

from lottery.tables.cli import main

sys.exit(main())
