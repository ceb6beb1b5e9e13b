module gofake
go 1.19
