"""Retrievers for other frameworks over a ClaraRAG; each module imports its framework itself.

    from clara.integrations.langchain import ClaraRetriever      # pip install langchain-core
    from clara.integrations.llamaindex import ClaraLlamaRetriever  # pip install llama-index-core

Importing ``clara`` never imports these frameworks.
"""
