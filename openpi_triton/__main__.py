from openpi_triton.cli import main

main()
