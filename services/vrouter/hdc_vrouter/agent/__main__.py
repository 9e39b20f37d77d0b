import sys

from hdc_vrouter.agent.cli import main

sys.exit(main())
