import sys

from marsseg.cli import main

sys.exit(main())
