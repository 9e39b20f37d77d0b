"""What every hdc service shares."""

import warnings

# connexion imports starlette's test client at import time, which warns about httpx on every
# service start; it is noise for operators (we never use that test client in production).
warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette\.testclient`")
