import sys

from nestir.cli.main import main

sys.exit(main())
