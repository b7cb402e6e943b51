"""recpar.eval"""
