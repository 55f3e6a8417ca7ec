"""`python -m server [ComfyUI flags]` starts comfyd."""
from server.main import main

if __name__ == "__main__":
    main()
