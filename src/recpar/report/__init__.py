"""recpar.report"""
