"""`hdc-im` / `python -m hdc_im`: run the im service standalone."""

from __future__ import annotations

from hdc_common.service import run_service


def main() -> None:
    from hdc_im.service import SERVICE

    run_service(SERVICE)


if __name__ == "__main__":
    main()
