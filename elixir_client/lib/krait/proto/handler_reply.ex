defmodule Krait.Proto.HandlerReply do
  @moduledoc """
  `krait.v1.HandlerReply`: the caller's answer to handler call `id`: a value (`data` with its
  `content_type`, JSON when empty) or an `error`.
  """
  use Krait.Proto.Message,
    fields: [
      id: {1, :uint64},
      data: {2, :bytes},
      content_type: {3, :string},
      error: {4, {:message, Krait.Proto.HandlerFailure}}
    ]
end
