"""``python -m lamra.demo``: ``make demo`` (see :mod:`lamra.demo.show`)."""

from lamra.demo.show import main

if __name__ == "__main__":
    main()
