"""recpar.model"""
