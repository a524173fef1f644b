# hardware spec data, shipped inside the wheel as roofsim.hw_specs
