module vmpower/deploy/go

go 1.19
