from csvbridge.cli import main

if __name__ == "__main__":  # guarded: worker processes may re-import the main module
    raise SystemExit(main())
