"""recpar.train"""
