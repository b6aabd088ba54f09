module flexcore.example/go-greeter

go 1.19
