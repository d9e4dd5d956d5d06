"""Data: episode records, dataset directories, the CoinRun generator and the Grain loader."""
