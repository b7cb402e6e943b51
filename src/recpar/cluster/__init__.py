"""recpar.cluster"""
