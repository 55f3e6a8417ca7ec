"""`python main.py [ComfyUI flags]` — the same entry point as `python -m server`,
for scripts and images written for ComfyUI."""
from server.main import main

if __name__ == "__main__":
    main()
