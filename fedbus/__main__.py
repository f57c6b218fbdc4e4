import sys

from fedbus.cli import main

sys.exit(main())
