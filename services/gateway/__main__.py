from services.gateway.serve import main

main()
