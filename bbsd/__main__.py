"""`python -m bbsd` is the same program as the `bbsd` console script."""

from bbsd.cli import main

if __name__ == "__main__":
    main()
